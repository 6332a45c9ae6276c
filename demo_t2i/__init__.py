"""Text-to-image CCA in miniature (``make demo-t2i``): see demo_t2i/README.md."""

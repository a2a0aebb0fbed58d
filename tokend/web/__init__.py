"""The HTTP side: the Klein realm that answers token requests, the transport limits
under it, the health page and Basic credentials parsing."""

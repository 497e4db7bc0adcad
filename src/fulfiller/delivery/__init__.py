"""Delivery: workers claim jobs, find the master in a catalog, upload it, and post the callback."""

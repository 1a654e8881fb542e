"""Inbound: the port-25 listener for what comes back (unsubscribes, complaints, bounces)."""

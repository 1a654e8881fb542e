"""Outbound: submission server, spool, signing, routing, delivery; cli.py wires every role."""

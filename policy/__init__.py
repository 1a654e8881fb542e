"""WebSoftTT Relay core: policy shared by the relay and the inbound listener."""

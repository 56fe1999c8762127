"""What DNS tells relayguard: who receives a domain's mail (MX → provider keys,
mx.py and providers.py) and whether our own addresses are listed (reputation.py)."""

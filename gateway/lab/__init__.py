"""Built-in lab peers for ``gateway demo`` and tests: a legacy phone and a TLS/SRTP provider.

Both are small asyncio programs built from the gateway's own SIP, SDP and SRTP modules, so a
new user can watch a call cross the gateway without installing anything else. They are test
equipment, not products: each implements what one demo call needs and measures what it saw.
"""

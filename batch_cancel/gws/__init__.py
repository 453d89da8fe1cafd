"""The GWS side: the REST session (aiohttp) and the CometD ack channel (our own Bayeux long-poll client)."""

"""The GWS side: the REST session (aiohttp) and the CometD ack channel (aiocometd)."""

"""The GWS side: the REST session (httpx) and the CometD ack channel (aiocometd)."""

"""Input: validate the files up front, then stream their rows in bounded memory."""

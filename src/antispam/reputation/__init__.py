"""Reputation: DNS blocklists, local history of senders, greylisting and rate limits (X.1240 7.7-7.11)."""

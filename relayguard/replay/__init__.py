"""Test mode: replay a queue against scripted upstreams on a virtual clock."""

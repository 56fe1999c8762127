"""The queue: what is due, the route table, one message's delivery round, the spool."""

"""The SMTP edges: the front end that accepts, the adapter that delivers, ESMTP parameters."""

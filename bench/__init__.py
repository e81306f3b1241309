"""`make bench`: this service side by side with the floor and PostGraphile (see README)."""

"""The sweep engine: config axes into trial specs, Ray scheduling, the results store."""

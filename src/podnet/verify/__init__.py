"""`podnet verify`: Kubernetes' three networking requirements, checked pair by pair."""

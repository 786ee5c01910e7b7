"""Hardware detection, the model catalog, memory math and the pure planner."""

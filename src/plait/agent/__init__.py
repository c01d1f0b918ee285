"""The agent: a planner writes a plan, the parser streams it into the scheduler, a joiner
answers or asks for another plan. Plan text is data here: it is parsed, never evaluated."""

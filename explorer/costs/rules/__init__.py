"""Cost rules, one module per op family."""

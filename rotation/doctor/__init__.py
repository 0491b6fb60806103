"""`rotation doctor`: the checks of a cluster's CMK chain, their report, and the fix for each."""

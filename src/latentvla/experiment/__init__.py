"""The experiment table: several models x seeds scored on one split, summarised with paired bootstrap CIs."""

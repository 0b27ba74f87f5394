"""References: what normal looks like for a source — built offline, learned online, stored and rebased."""

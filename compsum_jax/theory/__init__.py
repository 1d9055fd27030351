"""H-consistency theory of comp-sum losses (paper notes §1, §3, §4, §5.2)."""

"""Curation shared by both arms (paper Sec. 3.3): CLIP-score filtering, test-set
decontamination, per-class caps and seeded equal-size subsets. Every output is a key list
plus the config that produced it, never a copy of the images."""

"""Find and prove: hypotheses from several sources, regenerated on fresh seeds and tested, so that
an audit ends with verified bugs (Wiles et al. 2022)."""

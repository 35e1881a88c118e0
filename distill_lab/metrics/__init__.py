"""How results are measured, each beside a noise floor: distances between samples, Fréchet distance
and precision/recall in a feature space, classification and calibration, representation quality."""

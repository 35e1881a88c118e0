"""Networks any track can use: the time-conditioned MLP and U-Net, attention (softmax or linear), and
small module utilities."""

"""Networks: Conv4 (models/conv4.py), the references' conventions (models/reference.py), the sine MLP (models/mlp.py)."""

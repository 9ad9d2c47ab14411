"""Bank example: three banks train a card-fraud detector with DP-SGD (Opacus)."""

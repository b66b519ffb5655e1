"""Figures (matplotlib, Agg backend) and self-contained HTML views, one module per technique."""

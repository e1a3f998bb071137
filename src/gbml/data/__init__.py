"""Data: fetching raw datasets, preparing them into arrays, and sampling few-shot tasks from them."""

"""2:4 structured sparsity: weight sites, the pruning pass, annotations and the checker."""

"""What tagsmith measures with an encoder: candidate ranking, neighbour concepts, nearest-tag
search, and the suggest, trigger and score jobs with their plots and score files."""

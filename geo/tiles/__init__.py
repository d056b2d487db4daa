"""Vector tiles: MVT rendering in PostGIS, the tile cache and its change feed, TileJSON."""

"""Files out: streaming exports of a collection in the formats GIS tools read."""

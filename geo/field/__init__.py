"""The field app's server side: offline packages of a settlement, and reported edit conflicts."""

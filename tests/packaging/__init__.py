"""The package as users get it: a wheel installed into a clean virtualenv."""

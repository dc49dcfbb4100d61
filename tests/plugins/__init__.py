"""Adapters that live outside the package, as a company's in-house adapter would (`provider: pkg.mod:Class`)."""

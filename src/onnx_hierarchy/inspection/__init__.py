"""Reading a model module by module: statistics, data-flow graphs, differences and tag validation."""

"""The wire contract as a document: AsyncAPI 3.0 generated from the models and the topology."""

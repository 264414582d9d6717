"""Local infrastructure for laptops, demos and tests: the embedded broker and S3 server, Apache
Kafka and OpenSearch from Maven Central, and `restyle up`."""

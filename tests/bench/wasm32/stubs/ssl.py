# Stand-in: no TLS in the WebAssembly port (the bench runs plain MQTT, offline).
PROTOCOL_TLS_CLIENT = 2
CERT_REQUIRED = 2

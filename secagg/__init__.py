"""SecAgg+ secure aggregation (Bell et al. 2020, on Bonawitz et al. 2017).

Will hold pure, transport-free client and server state machines for the SecAgg+
stages (advertise keys, share keys, collect masked vectors, unmask), fixed-point
quantization, and the ClientApp mod / ServerApp workflow that drive them over the
Message API. Imports only the leaf layer of ``appliance`` (records, message, apps).
"""

"""The model server: DJLServing/SageMaker artifacts and routes, TGI and OpenAI APIs.

    commands.py     `shardserve serve` (argparse)     server.py    uvicorn + SIGTERM drain
    app.py          the FastAPI app: /ping, /metrics, routers
    routes_djl.py   /invocations, /predictions/{m}     routes_openai.py   /v1/...
    routes_management.py   /models                     middleware.py  drain, body limit, counts
    generation.py   admit -> generate -> stream/JSON, timeouts, disconnects
    model_store.py  locations, load phases, health     properties.py  serving.properties + env
    model_loader.py the load phases                    property_reader.py  typed reads, errors
    engines.py      engine choice, copies, balancing   accelerate_engine.py / custom_engine.py
    protocol.py / openai_protocol.py / chat.py   request schemas and response shapes
    handler.py / djl_compat.py   DJL's Input/Output, importable as djl_python
"""

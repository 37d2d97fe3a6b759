"""Drive ml-service with NVIDIA Triton's own client (tritonclient, PyPI) over
the Open Inference Protocol, HTTP and gRPC, and write what it saw as JSON.

    python kserve_client.py CASES.json OUT.json

CASES.json: {"http": "host:port", "grpc": "host:port",
             "cases": [{"model": name, "rows": [[f32, ...], ...]}, ...]}

For every case it runs inference four ways: HTTP with binary tensors (the
client's default), HTTP with JSON tensors, gRPC with raw contents (the
client's default), and gRPC with typed fp32_contents through the protocol's
generated stub; plus health, metadata and the errors for a wrong shape, a
wrong datatype, a wrong input name and an unknown model. The Rust test
(tests/api/kserve.rs) checks the answers against the domain endpoints.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import grpc


def outputs_of(result, names):
    return {n: result.as_numpy(n).astype(float).ravel().tolist() for n in names}


def error_of(fn):
    try:
        fn()
    except InferenceServerException as e:
        return {"status": str(e.status()), "message": e.message()}
    return None


def main():
    cases = json.load(open(sys.argv[1]))
    http = httpclient.InferenceServerClient(url=cases["http"])
    grpc_client = grpcclient.InferenceServerClient(url=cases["grpc"])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(cases["grpc"]))
    out = {
        "http_live": http.is_server_live(),
        "http_ready": http.is_server_ready(),
        "grpc_live": grpc_client.is_server_live(),
        "grpc_ready": grpc_client.is_server_ready(),
        "http_server": http.get_server_metadata(),
        "grpc_server_name": grpc_client.get_server_metadata().name,
        "cases": [],
    }
    for case in cases["cases"]:
        model = case["model"]
        x = np.asarray(case["rows"], dtype=np.float32)
        meta = http.get_model_metadata(model)
        gmeta = grpc_client.get_model_metadata(model)
        names = [o["name"] for o in meta["outputs"]]
        got = {
            "model": model,
            "http_metadata": meta,
            "grpc_metadata": {
                "name": gmeta.name,
                "versions": list(gmeta.versions),
                "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in gmeta.inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in gmeta.outputs],
            },
            "http_model_ready": http.is_model_ready(model),
            "grpc_model_ready": grpc_client.is_model_ready(model),
        }

        # HTTP, binary tensors both ways (tritonclient's default).
        i = httpclient.InferInput("features", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        r = http.infer(model, [i])
        got["http_binary"] = outputs_of(r, names)
        got["http_version"] = r.get_response()["model_version"]

        # HTTP, JSON tensors both ways.
        i = httpclient.InferInput("features", list(x.shape), "FP32")
        i.set_data_from_numpy(x, binary_data=False)
        r = http.infer(model, [i], outputs=[httpclient.InferRequestedOutput(n, binary_data=False) for n in names])
        got["http_json"] = outputs_of(r, names)

        # gRPC, raw contents (tritonclient's default).
        i = grpcclient.InferInput("features", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        r = grpc_client.infer(model, [i])
        got["grpc_raw"] = outputs_of(r, names)

        # gRPC, typed contents, through the protocol's own stub.
        req = service_pb2.ModelInferRequest(model_name=model, id="typed-1")
        t = req.inputs.add()
        t.name, t.datatype = "features", "FP32"
        t.shape.extend(x.shape)
        t.contents.fp32_contents.extend(x.ravel().tolist())
        resp = stub.ModelInfer(req)
        got["grpc_typed_id"] = resp.id
        got["grpc_typed"] = {o.name: list(o.contents.fp32_contents) for o in resp.outputs}

        # Errors, in each transport's form.
        bad = x[:, :-1]
        i = httpclient.InferInput("features", list(bad.shape), "FP32")
        i.set_data_from_numpy(bad)
        got["http_wrong_shape"] = error_of(lambda: http.infer(model, [i]))
        i = grpcclient.InferInput("features", list(bad.shape), "FP32")
        i.set_data_from_numpy(bad)
        got["grpc_wrong_shape"] = error_of(lambda: grpc_client.infer(model, [i]))
        as_int = x.astype(np.int32)
        i = httpclient.InferInput("features", list(x.shape), "INT32")
        i.set_data_from_numpy(as_int)
        got["http_wrong_datatype"] = error_of(lambda: http.infer(model, [i]))
        i = grpcclient.InferInput("features", list(x.shape), "INT32")
        i.set_data_from_numpy(as_int)
        got["grpc_wrong_datatype"] = error_of(lambda: grpc_client.infer(model, [i]))
        i = grpcclient.InferInput("input__0", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        got["grpc_wrong_name"] = error_of(lambda: grpc_client.infer(model, [i]))
        out["cases"].append(got)

    i = httpclient.InferInput("features", [1, 1], "FP32")
    i.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
    out["http_unknown_model"] = error_of(lambda: http.infer("resnet50", [i]))
    out["http_unknown_model_ready"] = http.is_model_ready("resnet50")
    i = grpcclient.InferInput("features", [1, 1], "FP32")
    i.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
    out["grpc_unknown_model"] = error_of(lambda: grpc_client.infer("resnet50", [i]))
    json.dump(out, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()

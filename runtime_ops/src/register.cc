// The library's one exported symbol: RegisterCustomOps, called by ORT when a session's options
// register this library (SessionOptions.register_custom_ops_library).
#include <cstring>
#include <mutex>
#include <vector>

#include "register.h"

namespace {

// ORT keeps pointers to the domain: it must outlive every session that uses it.
void KeepAlive(Ort::CustomOpDomain&& domain) {
  static std::mutex mutex;
  static std::vector<Ort::CustomOpDomain> domains;
  std::lock_guard<std::mutex> lock(mutex);
  domains.push_back(std::move(domain));
}

// The session config entry "onnx_compress.cpu_kernels" = "portable" selects the portable C++
// CPU kernels instead of the best the CPU supports (tests and comparisons); any other value or
// none: the best.
bool PortableRequested(const OrtApi* api, const OrtSessionOptions* options) {
  constexpr const char* kKey = "onnx_compress.cpu_kernels";
  int has = 0;
  OrtStatus* status = api->HasSessionConfigEntry(options, kKey, &has);
  if (status != nullptr) {
    api->ReleaseStatus(status);
    return false;
  }
  if (!has) return false;
  char value[32] = {};
  size_t size = sizeof(value);
  status = api->GetSessionConfigEntry(options, kKey, value, &size);
  if (status != nullptr) {
    api->ReleaseStatus(status);
    return false;
  }
  return std::strcmp(value, "portable") == 0;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return nullptr;  // cannot even report: ORT is older than the headers (1.21)
  Ort::InitApi(api);
  return oco::Guard("RegisterCustomOps", [&] {
    Ort::CustomOpDomain domain{oco::kDomain};
    for (const OrtCustomOp* op : oco::CpuOps(PortableRequested(api, options))) domain.Add(op);
#ifdef OCO_WITH_CUDA
    for (const OrtCustomOp* op : oco::CudaOps()) domain.Add(op);
#endif
    Ort::UnownedSessionOptions(options).Add(domain);
    KeepAlive(std::move(domain));
  });
}

// vicreg._C: the Python extension (pybind11 on the LibTorch that Python's torch uses). The Python
// package vicreg (python/vicreg/__init__.py) wraps it; see there for the documented API.
#include "vicreg/error.h"
#include "vicreg/io/safetensors.h"
#include "vicreg/io/state_dict.h"
#include "vicreg/loss.h"
#include "vicreg/models/registry.h"
#include "vicreg/run/artifacts.h"
#include "vicreg/version.h"

#include <torch/extension.h>

#include <map>
#include <string>
#include <tuple>

namespace py = pybind11;

namespace {

using Terms = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor>;

vicreg::VICRegLossOptions options(double sim_coeff, double std_coeff, double cov_coeff,
                                  double gamma, double eps, const std::string& preset) {
  return vicreg::VICRegLossOptions()
      .sim_coeff(sim_coeff)
      .std_coeff(std_coeff)
      .cov_coeff(cov_coeff)
      .gamma(gamma)
      .eps(eps)
      .preset(vicreg::parse_name<vicreg::LossPreset>(preset));
}

Terms as_tuple(const vicreg::VICRegLossTerms& t) {
  return {t.total, t.invariance, t.variance, t.covariance};
}

Terms loss(const torch::Tensor& z_a, const torch::Tensor& z_b, double sim_coeff, double std_coeff,
           double cov_coeff, double gamma, double eps, const std::string& preset,
           bool check_finite) {
  return as_tuple(vicreg::vicreg_loss(
      z_a, z_b,
      options(sim_coeff, std_coeff, cov_coeff, gamma, eps, preset).check_finite(check_finite)));
}

Terms loss_reference(const torch::Tensor& z_a, const torch::Tensor& z_b, double sim_coeff,
                     double std_coeff, double cov_coeff, double gamma, double eps,
                     const std::string& preset) {
  return as_tuple(vicreg::vicreg_loss_reference(
      z_a, z_b, options(sim_coeff, std_coeff, cov_coeff, gamma, eps, preset)));
}

/// A vicreg encoder held from Python (inference and weights; training happens in C++ or, after
/// export, in torchvision).
struct PyBackbone {
  vicreg::Backbone b;
  torch::Tensor forward(const torch::Tensor& x) {
    torch::NoGradGuard no_grad;
    return b.encoder->forward(x);
  }
  /// Parameters and buffers in state_dict order, sharing memory with the C++ module.
  vicreg::NamedTensors state_dict() const {
    vicreg::NamedTensors out = vicreg::module_state(*b.encoder);
    for (auto& entry : out) entry.second = entry.second.detach();
    return out;
  }
};

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "vicreg's C++ core (use the vicreg package, not this module)";
  m.attr("__version__") = vicreg::version();
  // vicreg's errors as Python's: bad input (UsageError) is a ValueError; the others, bad files
  // included, are RuntimeErrors (pybind11's translation of std::runtime_error).
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const vicreg::UsageError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  m.def("vicreg_loss", &loss, py::arg("z_a"), py::arg("z_b"), py::arg("sim_coeff"),
        py::arg("std_coeff"), py::arg("cov_coeff"), py::arg("gamma"), py::arg("eps"),
        py::arg("preset"), py::arg("check_finite"), py::call_guard<py::gil_scoped_release>());
  m.def("vicreg_loss_reference", &loss_reference, py::arg("z_a"), py::arg("z_b"),
        py::arg("sim_coeff"), py::arg("std_coeff"), py::arg("cov_coeff"), py::arg("gamma"),
        py::arg("eps"), py::arg("preset"), py::call_guard<py::gil_scoped_release>());

  py::class_<PyBackbone>(m, "Backbone")
      .def("forward", &PyBackbone::forward, py::call_guard<py::gil_scoped_release>())
      .def("state_dict", &PyBackbone::state_dict)
      .def_property_readonly("arch", [](const PyBackbone& p) { return p.b.config.model.arch; })
      .def_property_readonly("in_channels", [](const PyBackbone& p) { return p.b.in_channels; })
      .def_property_readonly("image_size", [](const PyBackbone& p) { return p.b.image_size; })
      .def_property_readonly("output_dim",
                             [](const PyBackbone& p) { return p.b.encoder->output_dim(); })
      .def_property_readonly(
          "config", [](const PyBackbone& p) { return vicreg::to_json(p.b.config).dump(); });
  m.def(
      "load_backbone",
      [](const std::string& path) { return PyBackbone{vicreg::read_backbone(path)}; },
      py::arg("path"), py::call_guard<py::gil_scoped_release>());
  m.def("backbone_names", [] { return vicreg::backbone_names(); });
  static const std::string build_backbone_doc =
      "A freshly initialised image encoder of an architecture (" +
      vicreg::join_names(vicreg::backbone_names()) +
      ") for images of in_channels x image_size x image_size (ResNets and ConvNeXts: the small "
      "stem "
      "up to 64 px); ViTs: patch_size and depth (0: the arch's)";
  m.def(
      "build_backbone",
      [](const std::string& arch, int64_t in_channels, int64_t image_size, int64_t patch_size,
         int64_t depth) {
        vicreg::Backbone b;
        const vicreg::BackboneFamily& family = vicreg::backbone_family(arch);  // lists the known
        b.config.model.arch = arch;
        b.config.model.patch_size = patch_size;
        b.config.model.depth = depth;
        vicreg::EncoderConfig ec;
        ec.arch = b.config.model.arch;
        ec.in_channels = b.in_channels = in_channels;
        ec.image_size = b.image_size = image_size;
        ec.patch_size = patch_size;
        ec.depth = depth;
        family.check_settings(ec);
        b.encoder = vicreg::make_encoder(ec);
        b.encoder->eval();
        return PyBackbone{b};
      },
      build_backbone_doc.c_str(), py::arg("arch"), py::arg("in_channels") = 3,
      py::arg("image_size") = 224, py::arg("patch_size") = 0, py::arg("depth") = 0,
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "export_backbone",
      [](const PyBackbone& p, const std::string& path) {
        return vicreg::export_backbone(p.b, path);
      },
      py::arg("backbone"), py::arg("path"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "save_safetensors",
      [](const std::vector<std::pair<std::string, torch::Tensor>>& tensors, const std::string& path,
         const std::map<std::string, std::string>& metadata) {
        py::gil_scoped_release release;
        vicreg::write_safetensors(path, tensors, metadata);
      },
      py::arg("tensors"), py::arg("path"), py::arg("metadata"));
  m.def(
      "load_weights",
      [](const std::string& path) {
        vicreg::WeightsFile f;
        {
          py::gil_scoped_release release;
          f = vicreg::read_weights(path);
        }
        return std::make_tuple(f.tensors, f.metadata, f.format);
      },
      py::arg("path"));
}

// The recurrence of a single-layer, unidirectional LSTM on the CPU, forward and backward, for
// lstmflow/models/fast_lstm.py (which does the input projection and the weight gradients as whole-sequence matrix
// multiplies in PyTorch, and falls back to the same algorithm in Python when this file cannot be compiled).
//
// Why C++: one time step is a small (B, H) x (H, 4H) multiply plus gate arithmetic; from Python each of the ~10
// operations of a step costs more in dispatch than in arithmetic. Why split the batch: the rows of a batch are
// independent, so each thread runs the whole time loop on its own rows with single-threaded multiplies, and the
// threads meet once per sequence instead of once per operation (OpenMP's per-operation barriers are what collapse
// on a busy machine).
//
// Layout, all time-major and contiguous, so that a step's rows are one block of memory: gates (T, B, 4H) enters
// holding x·W_ihᵀ + b_ih + b_hh and leaves holding the activated gates i, f, g, o (PyTorch's order); outputs,
// cells and tanh_cells (T, B, H) hold h_t, c_t and tanh(c_t).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Rows per thread: the batch split into at most one chunk per thread.
int64_t rows_per_chunk(int64_t batch) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  return std::max<int64_t>(1, (batch + threads - 1) / threads);
}

// The loops below index raw memory: every tensor must be contiguous, on the CPU, of one dtype.
void check_operands(const std::vector<at::Tensor>& tensors) {
  for (const at::Tensor& tensor : tensors) {
    TORCH_CHECK(tensor.device().is_cpu() && tensor.is_contiguous() && tensor.scalar_type() == tensors[0].scalar_type(),
                "lstmflow lstm_cpu: operands must be contiguous CPU tensors of one dtype");
  }
}

// tanh for float: Eigen's clamped rational approximation (a few ulp over the float range), arithmetic only, so
// the compiler vectorises the loops below; ATen's tanh costs more per step than the step's matrix multiply.
inline float fast_tanh(float x) {
  x = std::min(9.0f, std::max(-9.0f, x));  // tanh(±9) rounds to ±1 in float
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 - 8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
}
inline double fast_tanh(double x) { return std::tanh(x); }  // float64 is for checking, not speed

template <typename scalar_t>
inline scalar_t sigmoid(scalar_t x) {
  return scalar_t(0.5) + scalar_t(0.5) * fast_tanh(scalar_t(0.5) * x);  // σ(x) = (1 + tanh(x/2)) / 2
}

// One step's gate arithmetic, fused: the pre-activations in gates become i, f, g, o (kept for the backward pass),
// then c_t = f·c_{t-1} + i·g, tanh(c_t) (also kept) and h_t = o·tanh(c_t), for one chunk of the batch's rows.
template <typename scalar_t>
void cell_step(scalar_t* gates, const scalar_t* c_prev, int64_t c_prev_stride, scalar_t* c, scalar_t* tanh_c,
               scalar_t* h, int64_t rows, int64_t hidden, int64_t gates_stride, int64_t state_stride) {
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t* __restrict__ i = gates + r * gates_stride;
    scalar_t* __restrict__ f = i + hidden;
    scalar_t* __restrict__ g = f + hidden;
    scalar_t* __restrict__ o = g + hidden;
    const scalar_t* __restrict__ cp = c_prev + r * c_prev_stride;
    scalar_t* __restrict__ cr = c + r * state_stride;
    scalar_t* __restrict__ tc = tanh_c + r * state_stride;
    scalar_t* __restrict__ hr = h + r * state_stride;
    _Pragma("omp simd") for (int64_t j = 0; j < hidden; ++j) {
      i[j] = sigmoid(i[j]);
      f[j] = sigmoid(f[j]);
      g[j] = fast_tanh(g[j]);
      o[j] = sigmoid(o[j]);
      cr[j] = f[j] * cp[j] + i[j] * g[j];
      tc[j] = fast_tanh(cr[j]);
      hr[j] = o[j] * tc[j];
    }
  }
}

template <typename scalar_t>
void gate_gradients(const scalar_t* gates, const scalar_t* tanh_c, const scalar_t* c_prev, int64_t c_prev_stride,
                    const scalar_t* grad_out, const scalar_t* grad_h, scalar_t* grad_c, scalar_t* grad_gates,
                    int64_t rows, int64_t hidden, int64_t gates_stride, int64_t state_stride) {
  // dL/dh_t is this step's output gradient (grad_out) plus the next step's share (grad_h); dL/dc_t is grad_c, the
  // next step's share plus the path through h_t. Writes the gradient of the gates' pre-activations and replaces
  // grad_c with dL/dc_{t-1}. No transcendental functions: the forward pass kept the activations and tanh(c_t).
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* __restrict__ i = gates + r * gates_stride;
    const scalar_t* __restrict__ f = i + hidden;
    const scalar_t* __restrict__ g = f + hidden;
    const scalar_t* __restrict__ o = g + hidden;
    const scalar_t* __restrict__ tc = tanh_c + r * state_stride;
    const scalar_t* __restrict__ cp = c_prev + r * c_prev_stride;
    const scalar_t* __restrict__ go = grad_out + r * state_stride;
    const scalar_t* __restrict__ dh_next = grad_h + r * hidden;
    scalar_t* __restrict__ dc = grad_c + r * hidden;
    scalar_t* __restrict__ di = grad_gates + r * gates_stride;
    scalar_t* __restrict__ df = di + hidden;
    scalar_t* __restrict__ dg = df + hidden;
    scalar_t* __restrict__ d_o = dg + hidden;
    _Pragma("omp simd") for (int64_t j = 0; j < hidden; ++j) {
      const scalar_t dh = go[j] + dh_next[j];
      const scalar_t dct = dc[j] + dh * o[j] * (scalar_t(1) - tc[j] * tc[j]);
      d_o[j] = dh * tc[j] * o[j] * (scalar_t(1) - o[j]);
      di[j] = dct * g[j] * i[j] * (scalar_t(1) - i[j]);
      df[j] = dct * cp[j] * f[j] * (scalar_t(1) - f[j]);
      dg[j] = dct * i[j] * (scalar_t(1) - g[j] * g[j]);
      dc[j] = dct * f[j];
    }
  }
}

}  // namespace

// Runs the recurrence in place: gates (T, B, 4H) pre-activations → activations; fills outputs, cells, tanh_cells
// (T, B, H) from the initial h0, c0 (B, H) and the recurrent weights w_hh (4H, H).
void forward(at::Tensor gates, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
             at::Tensor outputs, at::Tensor cells, at::Tensor tanh_cells) {
  check_operands({gates, w_hh, h0, c0, outputs, cells, tanh_cells});
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = h0.size(1);
  const at::Tensor w_hh_t = w_hh.t();  // (H, 4H), a transposed view: BLAS reads it without a copy
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstmflow_lstm_forward", [&] {
    at::parallel_for(0, batch, rows_per_chunk(batch), [&](int64_t begin, int64_t end) {
      const int64_t rows = end - begin;
      at::Tensor h_prev = h0.narrow(0, begin, rows);  // (b, H)
      at::Tensor c_prev = c0.narrow(0, begin, rows);  // (b, H)
      for (int64_t t = 0; t < steps; ++t) {
        at::Tensor step_gates = gates.select(0, t).narrow(0, begin, rows);  // (b, 4H)
        step_gates.addmm_(h_prev, w_hh_t);
        at::Tensor c = cells.select(0, t).narrow(0, begin, rows);       // (b, H)
        at::Tensor tc = tanh_cells.select(0, t).narrow(0, begin, rows);  // (b, H)
        at::Tensor h = outputs.select(0, t).narrow(0, begin, rows);      // (b, H)
        cell_step<scalar_t>(step_gates.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(), c_prev.stride(0),
                            c.data_ptr<scalar_t>(), tc.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), rows, hidden,
                            step_gates.stride(0), c.stride(0));
        h_prev = h;
        c_prev = c;
      }
    });
  });
}

// The backward recurrence: from dL/doutputs (T, B, H) and dL/dh_T, dL/dc_T (B, H), fills grad_gates (T, B, 4H)
// with dL/d(pre-activations) and returns (dL/dh0, dL/dc0). The weight gradients are matrix multiplies of
// grad_gates done by the caller.
std::vector<at::Tensor> backward(const at::Tensor& gates, const at::Tensor& w_hh, const at::Tensor& c0,
                                 const at::Tensor& cells, const at::Tensor& tanh_cells, const at::Tensor& grad_outputs,
                                 const at::Tensor& grad_h_n, const at::Tensor& grad_c_n, at::Tensor grad_gates) {
  check_operands({gates, w_hh, c0, cells, tanh_cells, grad_outputs, grad_h_n, grad_c_n, grad_gates});
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = c0.size(1);
  at::Tensor grad_h = grad_h_n.clone(at::MemoryFormat::Contiguous);  // dL/dh_t, (B, H)
  at::Tensor grad_c = grad_c_n.clone(at::MemoryFormat::Contiguous);  // dL/dc_t, (B, H)
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstmflow_lstm_backward", [&] {
    at::parallel_for(0, batch, rows_per_chunk(batch), [&](int64_t begin, int64_t end) {
      const int64_t rows = end - begin;
      at::Tensor dh = grad_h.narrow(0, begin, rows);  // (b, H), contiguous rows
      at::Tensor dc = grad_c.narrow(0, begin, rows);
      for (int64_t t = steps - 1; t >= 0; --t) {
        const at::Tensor c_prev = t > 0 ? cells.select(0, t - 1).narrow(0, begin, rows) : c0.narrow(0, begin, rows);
        const at::Tensor step_gates = gates.select(0, t).narrow(0, begin, rows);
        at::Tensor step_grad = grad_gates.select(0, t).narrow(0, begin, rows);
        gate_gradients<scalar_t>(step_gates.data_ptr<scalar_t>(),
                                 tanh_cells.select(0, t).narrow(0, begin, rows).data_ptr<scalar_t>(),
                                 c_prev.data_ptr<scalar_t>(), c_prev.stride(0),
                                 grad_outputs.select(0, t).narrow(0, begin, rows).data_ptr<scalar_t>(),
                                 dh.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(), step_grad.data_ptr<scalar_t>(), rows,
                                 hidden, step_gates.stride(0), cells.stride(1));
        at::mm_out(dh, step_grad, w_hh);  // dL/dh_{t-1} through the recurrent weights, (b, 4H) x (4H, H)
      }
    });
  });
  return {grad_h, grad_c};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "LSTM recurrence, forward (in place)");
  m.def("backward", &backward, "LSTM recurrence, backward");
}

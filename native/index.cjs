// Loads the compiled addon; exports undefined when it was not built (callers then skip the
// optimisation it provides).
try {
  module.exports = require('./build/Release/ferry_native.node');
} catch {
  module.exports = undefined;
}

// Options shared by CLI commands.
import { Option } from 'commander';
import { SUPPORTED_FORMATS } from '../../image/types.js';

export function formatOption(): Option {
  return new Option('-f, --format <format>', 'image format instead of detecting it').choices([...SUPPORTED_FORMATS]);
}

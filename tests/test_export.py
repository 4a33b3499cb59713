"""ONNX export from the command line: a dynamic batch axis, embeddings equal to PyTorch's at batch 1, 7 and 64."""
import numpy as np, pytest, torch
from iaunet_fastai.cli import main
from iaunet_fastai.models import IAUnet, VideoIAUnet
from iaunet_fastai.inference import save_reid_model


@pytest.mark.parametrize('video', [False, True])
def test_export_cli_onnx_matches_pytorch_at_any_batch(tmp_path, video, capsys):
    ort = pytest.importorskip('onnxruntime'); pytest.importorskip('onnxscript')
    from iaunet_fastai.export import onnx_metadata
    torch.manual_seed(0)
    m = (VideoIAUnet('resnet18', num_classes=4, seq_len=2, pretrained=False) if video
         else IAUnet('resnet18', num_classes=4, pretrained=False)).eval()
    for name, mod in m.named_modules():          # non-zero IAU update BNs (as after training): the blocks count
        if name.endswith('update') and isinstance(mod, torch.nn.Sequential): torch.nn.init.normal_(mod[1].weight, std=.5)
    m.reid_config = dict(img_size=[64, 32], vocab=[0, 1, 2, 3])
    save_reid_model(m, tmp_path/'model.pth')
    assert main(['export', str(tmp_path/'model.pth'), '--onnx', str(tmp_path/'m.onnx'), '--no-check']) == 0
    meta = onnx_metadata(tmp_path/'m.onnx')
    assert meta['img_size'] == [64, 32] and meta['seq_len'] == (2 if video else None) and meta['embed_dim'] == m.embed_dim
    sess = ort.InferenceSession(str(tmp_path/'m.onnx'), providers=['CPUExecutionProvider'])
    assert sess.get_inputs()[0].shape[0] not in (1, 2)          # the batch axis is symbolic, not the traced size
    g = torch.Generator().manual_seed(1)
    for b in (1, 7, 64):
        x = torch.randn((b, 2, 3, 64, 32) if video else (b, 3, 64, 32), generator=g)
        with torch.no_grad(): ref = m(x).numpy()
        got = sess.run(None, {'images': x.numpy()})[0]
        assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4, (b, np.abs(got - ref).max())
    # an existing file is refused before any work; --overwrite replaces it
    assert main(['export', str(tmp_path/'model.pth'), '--onnx', str(tmp_path/'m.onnx')]) == 1
    assert 'exists' in capsys.readouterr().err
